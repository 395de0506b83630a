"""``facemark explain``: the SLPT and SDFL papers' explanatory figures for any checkpoint and face.

- :mod:`facemark.explain.faces`: the model and the face crops it sees (one image, or a split);
- :mod:`facemark.explain.slpt`: SLPT's Figs. 1, 2 (right), 3 and 5 and the per-stage / per-layer NME;
- :mod:`facemark.explain.sdfl`: SDFL's Figs. 4 and 9 and the progressive-occlusion curve of Fig. 2 (c, d);
- :mod:`facemark.explain.page`: the PNG / ``.npy`` writer and the markdown page;
- :mod:`facemark.explain.commands`: the command line (argument declarations import nothing heavy).

Every tensor behind a figure comes from the model itself: an explicit return value (SLPT's
per-stage, per-layer predictions; SDFL's dynamic adjacency) or a forward hook (attention weights
through :class:`facemark.models.slpt.Tap`, patch boxes, graph node features).
"""
