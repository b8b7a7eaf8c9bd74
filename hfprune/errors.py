"""The one exception type hfprune raises for bad input."""


class PruningError(ValueError):
    """Bad pruning input (index out of range, unsupported model, uneven GQA pattern...). One line, says what to do."""
