"""What is done with results once a run has measured them: the results store
(:mod:`.store`, with :mod:`.legacy_rows` for older folders), comparisons over seeds
(:mod:`.compare`, :mod:`.stats`), how reports name things, from the registries
(:mod:`.names`), a run's text tables (:mod:`.report`), the HTML report (what it shows:
:mod:`.report_data`; the page: :mod:`.html_report`, :mod:`.html_widgets`,
:mod:`.report_figures`) and the figures (:mod:`.plots`).

The run itself lives in :mod:`sslpoison.experiment`, which imports this package; this package
reads a run's folder as data only (:mod:`sslpoison.experiment.results`,
:mod:`sslpoison.experiment.provenance`), never the run's machinery."""
