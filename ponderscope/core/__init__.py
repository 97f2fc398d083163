"""The core: what the web layer, the command line and the notebook share, and nothing of theirs.

    checkpoint --(loaded.ModelStore / load)--> LoadedModel --(model.trace)--> Trace
               --(answers.image_answer ...)--> a typed answer --> ponderscope.figures / JSON

    loaded.py      a loaded checkpoint (card, module, test set, device, turns at the model)
    imaging.py     what an image may cost, and the card's preprocessing (decode, prepare, normalize)
    answers.py     Trace -> the typed answers (image, text, parity) every face shows
    statistics.py  one pass over a test set: per-image records, the card's metrics, the Dataset view
    jobs.py        background jobs (dataset statistics, what-if studies) cached on disk
    data.py, tasks.py, imagefolder.py, workloads.py
                   the data: real data sources, synthetic tasks, image folders, a card's test set
"""
