"""Everything ``interbert data ...`` runs, offline, before training; nothing on the training path
imports this package.

The command line: ``commands`` (``interbert data``), ``peer_commands`` (``convert-lmdb``,
``convert-vinvl``), ``converter_flags`` (the converters' shared flags and report),
``guarded_command`` (errors and interruptions as one line and an exit status).
Converters: ``conversion`` (the pipeline every converter shares), ``detections`` (detector arrays →
a record in the store's label convention), ``formats`` (one module per detector format).
Also ``captions`` (caption corpora → manifests), ``synth`` (a synthetic corpus), and the store
tools ``verify`` (check a store and manifests), ``migrate`` (schema 1 → 2) and ``merge`` (list
stores as one).
"""
