from pathlib import Path

import pytest

# From /work/main the shared corpora sit beside the checkout; a worktree elsewhere finds them at /work/shared.
CORPORA_PLACES = (Path(__file__).resolve().parents[3] / ".." / "shared" / "corpora", Path("/work/shared/corpora"))
HH_FILE = Path("preferences") / "harmless-base-test.jsonl.gz"


@pytest.fixture
def hh_harmless():
    """The real Anthropic HH harmless-base test split: 2,312 {chosen, rejected} transcript pairs."""
    for corpora in CORPORA_PLACES:
        if (corpora / HH_FILE).is_file():
            return corpora / HH_FILE
    pytest.skip(f"real HH corpus not found at {' or '.join(str(c / HH_FILE) for c in CORPORA_PLACES)}")
