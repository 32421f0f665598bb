"""Drawing the study's figures: data in, a matplotlib Figure out.

Every plot function takes plain data (arrays, tensors, lists, dicts; computed by
`vitlib.analysis` or read from a run directory) and draws on the Axes (`ax=`) or Figure /
SubFigure (`fig=`) it is given, or on a new `matplotlib.figure.Figure`, and returns the root
Figure. Nothing here imports pyplot: no global figure state, no `plt.show()`. A new figure is
a `NotebookFigure`, which Jupyter shows as a PNG when it is the last expression of a cell (or
passed to `display`), with or without `%matplotlib inline`; `save_figure` keeps it.

Figures (file stems come from `figure_name`, written by `save_figure` as .png and .svg):

    position_similarity_<model>   plot_position_similarity  paper Fig. 7 centre, study Fig. 3
    attention_heads_<model>_...   plot_attention_heads      study Fig. 5: all heads of a layer
    attention_<model>_...         plot_attention            one head / one query over the image
    attention_rollout_<model>_... plot_attention_panels     study Fig. 6: rollout vs "for dog"
    attention_distance_<model>    plot_attention_distance   paper Fig. 7 right
    embedding_filters_<model>     plot_filters              paper Fig. 7 left
    training_curves               plot_training_curves      probe and fine-tune side by side
    confusion_matrix_<experiment> plot_confusion_matrix
    misclassified_<experiment>    plot_misclassified        with probabilities and rollout
    before_after                  plot_before_after         filters, positions, distances x models
    variants                      plot_variant_comparison   accuracy vs time, params, memory
    attention_memory              plot_attention_memory     bytes vs tokens per attention kind

Where they live (import them from here, `from vitlib import viz`; every name is re-exported):

    base       new figures, `figure_name`, `save_figure`, `FIGURES`
    attention  maps over an input image, and its patch grid
    summary    `analysis.summarise_model`'s views: the paper's Figure 7, before / after
    results    one training run: curves, confusion matrix, misclassified images
    variants   the variant comparison and attention memory
"""

# The module-level constants of the former single-file viz.py, kept reachable (not in __all__).
from vitlib.viz.attention import ATTENTION_CMAP as ATTENTION_CMAP
from vitlib.viz.attention import (
    plot_attention,
    plot_attention_heads,
    plot_attention_panels,
    plot_patches,
)
from vitlib.viz.base import FIGURES, NotebookFigure, figure_name, save_figure
from vitlib.viz.results import METRIC_ALIASES as METRIC_ALIASES
from vitlib.viz.results import METRICS as METRICS
from vitlib.viz.results import (
    plot_confusion_matrix,
    plot_misclassified,
    plot_training_curves,
)
from vitlib.viz.summary import (
    plot_attention_distance,
    plot_before_after,
    plot_filters,
    plot_position_similarity,
)
from vitlib.viz.variants import plot_attention_memory, plot_variant_comparison

__all__ = [
    "FIGURES",
    "NotebookFigure",
    "figure_name",
    "plot_attention",
    "plot_attention_distance",
    "plot_attention_heads",
    "plot_attention_memory",
    "plot_attention_panels",
    "plot_before_after",
    "plot_confusion_matrix",
    "plot_filters",
    "plot_misclassified",
    "plot_patches",
    "plot_position_similarity",
    "plot_training_curves",
    "plot_variant_comparison",
    "save_figure",
]
