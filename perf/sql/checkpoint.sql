-- Start each measurement with clean shared buffers, so no write-back of the previous step lands in it.
checkpoint
