"""Model sources of the export tool: the built-in tiny model (also used by the plugin's reproducers), the real
E2B/E4B shapes with random weights, and local checkpoint directories. Imports torch/transformers lazily."""
