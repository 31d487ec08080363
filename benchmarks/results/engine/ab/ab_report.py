import json, glob, statistics, re, collections
rows = collections.defaultdict(lambda: {"before": [], "after": []})
for f in glob.glob('/tmp/bench/ab/*.json'):
    m = re.match(r'.*/(full|var)-(.*)-(before|after)-(\d)\.json', f)
    kind, tag, side, rnd = m.groups()
    d = json.load(open(f))
    if kind == 'full':
        for r in d['results']:
            rows[(r['name'], '')][side].append((r['ratios']['lstmkit_over_torch_fb'], r['impls']['lstmkit']['fb_ms']))
    else:
        for r in d['variants']:
            rows[(r['variant'], f"({r['T']},{r['B']},{r['H']})")][side].append((r['ratio'], r['fb_ms']))
print(f"{'row':<42}{'size':<14}{'ratio before':>13}{'after':>8}{'Δ%':>7}{'  ms before':>12}{'after':>9}  n")
for (name, size), v in sorted(rows.items()):
    if not v['before'] or not v['after']: continue
    rb = statistics.median(x[0] for x in v['before']); ra = statistics.median(x[0] for x in v['after'])
    mb = statistics.median(x[1] for x in v['before']); ma = statistics.median(x[1] for x in v['after'])
    print(f"{name:<42}{size:<14}{rb:>13.3f}{ra:>8.3f}{100*(ra/rb-1):>7.1f}{mb:>12.2f}{ma:>9.2f}  {len(v['before'])}/{len(v['after'])}")
