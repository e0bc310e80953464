"""Transfer of a trained detector to a new dataset or generator: the head, the last stages,
everything, LoRA on the convolutions (PEFT) or an adapter block."""
