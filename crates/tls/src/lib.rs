//! The cluster's certificates (a CA, one certificate per node) and the mutual-TLS configurations ferryd uses.
