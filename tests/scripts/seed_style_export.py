"""An export script written like the seed repo's, for the end-to-end test. It never imports
gemma3n_export_fixes: whatever fixes it gets come from the installed package's start-up hook.

usage: python seed_style_export.py CHECKPOINT_DIR OUT.pte [SEQ_LEN]
"""

import sys

import torch
from executorch.exir import to_edge
from transformers import Gemma3nForCausalLM


class TextOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


def main() -> None:
    checkpoint, out = sys.argv[1], sys.argv[2]
    seq_len = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    model = Gemma3nForCausalLM.from_pretrained(checkpoint).eval()
    example = (torch.ones(1, seq_len, dtype=torch.long),)
    exported = torch.export.export(TextOnly(model), example, strict=False)
    program = to_edge(exported).to_executorch()
    with open(out, "wb") as f:
        f.write(program.buffer)
    # This script never imports the package; it is in sys.modules only if the start-up hook loaded it.
    print("hook-loaded:", "gemma3n_export_fixes.plugin.engine" in sys.modules)
    print("exported", out)


if __name__ == "__main__":
    main()
