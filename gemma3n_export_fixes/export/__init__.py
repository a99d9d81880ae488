"""The export tool's build side: options, quantization, the fixed-window and KV-cache programs, the weight-size
model, and writing (atomic ``.pte`` + ``.json`` record). Uses the plugin only through its public API."""
