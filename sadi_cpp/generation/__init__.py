"""Open-ended generation: many prompts under many steering settings, scored for behaviour and fluency."""
