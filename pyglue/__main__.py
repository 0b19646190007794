from pyglue.cli import main

main()
