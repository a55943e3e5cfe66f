"""auxilearn-hpo."""
