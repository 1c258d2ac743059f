#!/usr/bin/env python3
"""A synthetic payer for CI: reads the 837 batches the gateway built (files given as arguments)
and answers each with an X12 835 on stdout, one interchange per 837: every third claim denied
(CO-16 with RARC N290), the others paid at 90% of each payable line (CO-45 for the rest), a PLB
interest credit of $1.25. Amounts in integer cents throughout."""
import sys


def cents(v):
    neg = v.startswith("-")
    v = v.lstrip("-")
    whole, _, frac = v.partition(".")
    c = int(whole or "0") * 100 + int((frac + "00")[:2])
    return -c if neg else c


def money(c):
    s = "-" if c < 0 else ""
    c = abs(c)
    return f"{s}{c // 100}.{c % 100:02d}"


def claims_of(text):
    text = text.lstrip("\ufeff")
    el, comp, term = text[3], text[104], text[105]
    out = []
    for raw in text.split(term):
        seg = raw.strip()
        if not seg:
            continue
        e = seg.split(el)
        if e[0] == "CLM":
            out.append({"pcn": e[1], "charge": cents(e[2]), "lines": []})
        elif e[0] in ("SV1", "SV2") and out:
            code, charge, units = (e[1], e[2], e[4]) if e[0] == "SV1" else (e[2], e[3], e[5])
            out[-1]["lines"].append({"code": code.replace(comp, ":"), "charge": cents(charge), "units": units, "id": "", "date": ""})
        elif e[0] == "REF" and e[1] == "6R" and out and out[-1]["lines"]:
            out[-1]["lines"][-1]["id"] = e[2]
        elif e[0] == "DTP" and e[1] == "472" and out and out[-1]["lines"]:
            out[-1]["lines"][-1]["date"] = e[3]
    return out


def answer(claims, control, trn):
    body, total = [], 0
    for i, c in enumerate(claims):
        deny = i % 3 == 1
        paid, lines = 0, []
        for l in c["lines"]:
            lp = 0 if deny else l["charge"] * 9 // 10
            paid += lp
            lines.append(f"SVC*{l['code']}*{money(l['charge'])}*{money(lp)}**{l['units']}~DTP*472*D8*{l['date']}~")
            if l["charge"] - lp:
                lines.append(f"CAS*CO*{'16' if deny else '45'}*{money(l['charge'] - lp)}~")
            lines.append(f"REF*6R*{l['id']}~")
            if deny:
                lines.append("LQ*HE*N290~")
        total += paid
        body.append(f"CLP*{c['pcn']}*{'4' if deny else '1'}*{money(c['charge'])}*{money(paid)}**MC*ICN{control}{i:04d}*11*1~" + "".join(lines))
    plb = -125
    st = (f"ST*835*0001~BPR*I*{money(total - plb)}*C*ACH*CCP*01*999999999*DA*123456*1512345678**01*999999999*DA*98765*20261201~"
          f"TRN*1*{trn}*1610442~N1*PR*MEDI-CAL*PI*610442~N1*PE*DEMO COMMUNITY HEALTH CENTER*XX*1600000016~LX*1~"
          + "".join(body) + f"PLB*1600000016*20261231*L6:INT{control}*{money(plb)}~")
    count = st.count("~") + 1
    return (f"ISA*00*          *00*          *ZZ*PAYER          *ZZ*WELLNESSGW     *261201*1200*^*00501*{control:09d}*0*P*:~"
            f"GS*HP*PAYER*WELLNESSGW*20261201*1200*{control}*X*005010X221A1~{st}SE*{count}*0001~GE*1*{control}~IEA*1*{control:09d}~")


if __name__ == "__main__":
    for n, path in enumerate(sys.argv[1:]):
        claims = claims_of(open(path, encoding="utf-8").read())
        if claims:
            print(answer(claims, 500 + n, f"CI-EFT-{n + 1}"))
