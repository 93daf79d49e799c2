//! nsproxyfs: Linux namespaces with names and a place in the filesystem.
