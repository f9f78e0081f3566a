"""Training: data preparation, LoRA fine-tuning, evaluation, versioned LoRAs."""
