"""Tools for tuning rules on recordings: replay one file, evaluate a labelled set.

Both run the daemon's own listening path (`monitor.pipeline.Pipeline`) over files read as fast
as the model answers, so what they report is what the daemon would have done:

    replay_file(config, ruleset) -> ReplayRun          monitor.tuning.replay
    write_replay(run, out_dir, ruleset, node)          scores.jsonl, events.jsonl, timeline.png
    load_dataset(folder, ruleset) -> Dataset           monitor.tuning.labels
    evaluate(config, ruleset, dataset) -> dict         monitor.tuning.eval (report.json content)
"""
