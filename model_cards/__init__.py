"""Model card templates, shipped inside the wheel as `hfprune.model_cards` (see README.md here)."""
