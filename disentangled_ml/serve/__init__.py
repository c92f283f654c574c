"""``dml serve``: a similarity explorer in the browser over a catalogue made by ``dml embed``.

One module per concern:

* :mod:`.explorer`: the catalogue and its queries as plain dicts (search is ``Catalogue.search``);
* :mod:`.audio_files`: which files may be sent (the catalogue's own, under its audio root);
* :mod:`.catalogue_map`: the 2-D map of a condition's view (PCA, or UMAP when installed), cached
  beside the catalogue, and its colours;
* :mod:`.app`: the Starlette app and uvicorn (routes, upload limit, host check);
* ``static/``: the page (plain HTML, CSS and JavaScript, no build step, no library).

docs/design.md ("The explorer") describes the API and the safety rules.
"""
