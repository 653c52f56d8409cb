"""The error a recipe raises for input it cannot run with."""


class RecipeError(ValueError):
    """A recipe was given arguments or inputs it cannot run with; the message says what to change."""
