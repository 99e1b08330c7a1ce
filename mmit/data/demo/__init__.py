"""The offline demo data, generated with exact ground truth: image scenes (``scenes``), spoken
clips (``speech``) and text skills (``text``)."""
