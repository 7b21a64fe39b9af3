//! Ceremonies.
