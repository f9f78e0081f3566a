"""Training: data preparation, LoRA fine-tuning, evaluation, versioned adapters."""
