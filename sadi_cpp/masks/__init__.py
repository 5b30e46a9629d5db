"""The SADI mask: its type, its GGUF file, the model it fits, and how it is built (statistics, their cache, control vectors)."""
