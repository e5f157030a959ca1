from django import forms

from kb.search.retrieval import MODES

MODE_LABELS = {"hybrid": "Hybrid (fused)", "bm25": "Keywords (BM25)", "vector": "Meaning (vector)"}
# The admin page shows this many passages unless asked for another number up to the maximum.
DEFAULT_RESULTS = 10
MAX_RESULTS = 50


class SearchForm(forms.Form):
    q = forms.CharField(label="Query", required=False, strip=True)
    mode = forms.ChoiceField(
        label="Mode", choices=[(mode, MODE_LABELS[mode]) for mode in MODES], widget=forms.RadioSelect
    )
    k = forms.IntegerField(label="Results", min_value=1, max_value=MAX_RESULTS)

    DEFAULTS = {"mode": "hybrid", "k": str(DEFAULT_RESULTS)}

    @classmethod
    def from_query_string(cls, params) -> "SearchForm":
        """Bound to the request's parameters over the defaults, so that a first visit shows them selected."""
        return cls({**cls.DEFAULTS, **{key: params.get(key) for key in params}})
