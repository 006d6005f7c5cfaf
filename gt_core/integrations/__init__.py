"""GreenTrainer inside other training loops (Hugging Face transformers.Trainer)."""
