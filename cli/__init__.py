"""The `mfface` command line: thin click commands over the library."""
