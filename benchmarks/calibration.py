"""The shipped models' calibration as their cards record it, as a markdown table.

    python -m cifarapp calibrate NAME --data PATH      # once per model: fits T, updates weights/NAME.*
    python benchmarks/calibration.py                   # the table of what the cards now say

The temperature is fitted on the validation split the model's config held out of training; the
expected calibration error (15 equal-width confidence bins) is given on that split and on the test
set, with the raw softmax and with the logits divided by T. Accuracy does not change: dividing the
logits by a positive number keeps every arg-max.
"""

from __future__ import annotations

import json
from pathlib import Path

from cifarapp.weights import WEIGHTS_DIR


def main() -> None:
    print("| model | test accuracy | temperature | fitted on | validation NLL | validation ECE | test ECE |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for card_path in sorted(Path(WEIGHTS_DIR).glob("*.json")):
        card = json.loads(card_path.read_text())
        fitted, test = card.get("calibration"), card.get("test_ece")
        if not fitted or not test:
            print(f"| `{card['name']}` | {card['test_accuracy']:.2%} | – | not calibrated | | | |")
            continue
        print(f"| `{card['name']}` | {card['test_accuracy']:.2%} | {fitted['temperature']:.2f} | "
              f"{fitted['n_images']:,} held-out images | {fitted['nll_before']:.3f} → {fitted['nll_after']:.3f} | "
              f"{fitted['ece_before']:.1%} → {fitted['ece_after']:.1%} | "
              f"{test['raw']:.1%} → {test['calibrated']:.1%} |")


if __name__ == "__main__":
    main()
