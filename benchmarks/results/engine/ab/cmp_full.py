import json, sys
a=json.load(open(sys.argv[1]))['results']; b=json.load(open(sys.argv[2]))['results']
bb={r['name']:r for r in b}
print(f"{'config':<32}{'lk/torch fb before':>20}{'after':>8}{'Δ%':>7}{'lk ms b':>9}{'lk ms a':>9}{'torch b':>9}{'torch a':>9}{'peakMB b':>9}{'a':>7}")
for r in a:
    s=bb[r['name']]
    x=r['ratios']['lstmkit_over_torch_fb']; y=s['ratios']['lstmkit_over_torch_fb']
    print(f"{r['name']:<32}{x:>20.3f}{y:>8.3f}{100*(y/x-1):>7.1f}{r['impls']['lstmkit']['fb_ms']:>9.2f}{s['impls']['lstmkit']['fb_ms']:>9.2f}{r['impls']['torch']['fb_ms']:>9.2f}{s['impls']['torch']['fb_ms']:>9.2f}{r['impls']['lstmkit']['peak_mb']:>9.1f}{s['impls']['lstmkit']['peak_mb']:>7.1f}")
