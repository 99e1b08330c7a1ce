"""The offline demo data, generated with exact ground truth: image scenes (``scenes``), image pairs
and triples to compare (``pairs``), clips of moving shapes (``motion``), spoken clips (``speech``)
and text skills (``text``)."""
