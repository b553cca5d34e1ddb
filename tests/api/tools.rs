//! Independent clients (below).
