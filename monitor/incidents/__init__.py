"""One incident per sound: the ON events of one rule across rooms, what was heard in words, and where they go.

    settings.py   the `describe:` and `incidents:` config sections
    grouping.py   the pure core: which ON events form one incident, the attributed room, the payload
    desk.py       the daemon's side: stamping ON events, asking descriptions, publishing incidents
"""
