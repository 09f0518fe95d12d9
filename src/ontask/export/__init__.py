"""`ontask export`: rows in the layouts fine-tuning tools read, with a dataset card.

`export(input, output, format=...)` reads anything ontask reads (a data file, an ontask
output, a run folder, a saved dataset) and writes `messages` (TRL), `sharegpt` (axolotl,
LLaMA-Factory) or `alpaca` rows to `.jsonl`, `.parquet` or a `save_to_disk` folder.
`formats` holds the pure row conversions, `recipe` reads the manifests of the commands that
made the input, `card` renders the Hugging Face dataset card (`assets/card.md.jinja`).
"""

from .formats import FORMATS, to_row
from .recipe import Recipe, Step, find_recipe
from .write import export

__all__ = ["FORMATS", "Recipe", "Step", "export", "find_recipe", "to_row"]
