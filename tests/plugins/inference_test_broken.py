"""A plugin module that cannot be imported, as when a backend's native
library is missing."""

raise ImportError("libfrobnicate.so.1: cannot open shared object file")
