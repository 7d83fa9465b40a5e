//! `smtp-relay check-tls`: placeholder.
