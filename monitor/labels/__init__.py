"""The labelled set: clips of a home's own sound that a person marked right, wrong or missed.

Kept under `state_dir/labels/<room>/<rule>/{positive,negative}/` as WAV files with a JSON
sidecar each (`monitor.labels.store`), read back by `audio-monitor eval --labels` and
`audio-monitor compare` (`monitor.labels.store.read_labels`). The daemon makes them from the page
and MQTT (`monitor.labels.requests` checks what is asked; `monitor.daemon.labelling` saves it).
"""
