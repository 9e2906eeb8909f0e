"""The attack suite: one table-driven module per family of JWT verifier mistakes."""
