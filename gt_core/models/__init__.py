"""Models to fine-tune: loading pretrained or tiny ones, and small facts about them."""
