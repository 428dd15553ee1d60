"""Domain rules: poses, credits, generations. No HTTP here."""
