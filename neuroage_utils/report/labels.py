"""Display names of model keys, for tables and figures. The names themselves live in the one registry
of model recipes (:mod:`neuroage_utils.evaluation.recipes`, one ``name`` per recipe): rename a model
there; these are its views."""

from neuroage_utils.evaluation import recipes

__all__ = ["MODEL_NAMES", "CHAPTER_NAMES", "MODEL_LABELS"]

#: Names on the simulated-cohort pages that compare models across chapters (summary, leaderboard).
MODEL_NAMES = recipes.names("cells")

#: Shorter names in a chapter's own tables, where the page says the rest ("elastic net", not "(cells)").
CHAPTER_NAMES = recipes.names("cells", short=True)

#: Names on the real-donor page (donor-level profiles: no cell-level models).
MODEL_LABELS = recipes.names("donors")
