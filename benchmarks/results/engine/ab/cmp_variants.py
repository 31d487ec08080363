import json, sys
a=json.load(open(sys.argv[1]))['variants']; b=json.load(open(sys.argv[2]))['variants']
key=lambda r:(r['variant'],r['T'],r['B'],r['H'])
bb={key(r):r for r in b}
print(f"{'variant':<32}{'size':<16}{'before':>8}{'after':>8}{'Δratio%':>9}{'ms before':>10}{'ms after':>10}{'plain b':>9}{'plain a':>9}")
for r in a:
    k=key(r)
    if k not in bb: print("missing",k); continue
    s=bb[k]
    print(f"{k[0]:<32}{str(k[1:]):<16}{r['ratio']:>8.3f}{s['ratio']:>8.3f}{100*(s['ratio']/r['ratio']-1):>9.1f}{r['fb_ms']:>10.2f}{s['fb_ms']:>10.2f}{r['plain_fb_ms']:>9.2f}{s['plain_fb_ms']:>9.2f}")
