"""The shadow comparator (app.py: the service; compare.py: the comparison, pure)."""
