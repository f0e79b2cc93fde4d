"""The one training engine used by every method, attack, defense and probe."""
