"""Input and output: storage (local or s3://), BigStitcher XML, N5, OME-Zarr, TIFF."""
