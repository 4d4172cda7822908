"""Plain ``torch.nn`` building blocks (untyped)."""
