create database {database} template {template}
