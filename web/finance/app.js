// Finance dashboard of wellness-gateway: vanilla JS, no build step, served under a strict CSP
// (script-src 'self', style-src 'self'): no inline code, no eval, API text only via textContent.
'use strict';

(function () {
  var TOKEN_KEY = 'finance-token';
  var $ = function (id) { return document.getElementById(id); };
  var charts = {};
  var generation = 0; // a newer load supersedes the answers of an older one
  var currentSite = null;
  var claimTicket = 0;

  // ---------- money: integer cents only, never through floating point ----------

  function groupThousands(digits) {
    return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  }

  // 12345 -> "$123.45", -5 -> "-$0.05"; integer division and remainder on BigInt.
  function money(cents) {
    if (typeof cents !== 'number' || !Number.isSafeInteger(cents)) {
      if (typeof cents !== 'string' || !/^-?\d+$/.test(cents)) return '—';
    }
    var b = BigInt(cents);
    var negative = b < 0n;
    if (negative) b = -b;
    var dollars = b / 100n;
    var rest = b % 100n;
    return (negative ? '-' : '') + '$' + groupThousands(dollars.toString()) + '.' + rest.toString().padStart(2, '0');
  }

  // Axis ticks: whole dollars when the value is a whole number of dollars.
  function moneyTick(value) {
    if (!Number.isSafeInteger(value)) return '';
    var s = money(value);
    return s.endsWith('.00') ? s.slice(0, -3) : s;
  }

  function count(n) {
    return Number.isSafeInteger(n) ? (n < 0 ? '-' : '') + groupThousands(String(Math.abs(n))) : '—';
  }

  // ---------- DOM helpers (textContent only) ----------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === 'text') node.textContent = String(v);
      else if (k === 'className') node.className = v;
      else if (k.slice(0, 2) === 'on') node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    });
    (children || []).forEach(function (c) {
      if (c !== null && c !== undefined) node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return node;
  }

  function td(text, cls) { return el('td', { text: text === null || text === undefined ? '—' : text, className: cls }); }

  function moneyTd(cents, field) {
    var cls = 'num' + (typeof cents === 'number' && cents < 0 ? ' negative' : '');
    return el('td', { className: cls, 'data-cents': cents, 'data-field': field, text: money(cents) });
  }

  function numTd(n) { return el('td', { className: 'num', text: count(n) }); }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  // A report that failed to load is rendered empty with data.failed, so no stale numbers stay on screen.
  function emptyRow(tbody, cols, text, data) {
    text = data && data.failed ? 'Not loaded: see the error above.' : text || 'No data.';
    tbody.appendChild(el('tr', { className: 'empty' }, [el('td', { colspan: cols, text: text })]));
  }

  function codeList(items) {
    if (!items || !items.length) return '—';
    return items.map(function (r) { return r.code + (r.description ? ' — ' + r.description : ''); }).join('; ');
  }

  // ---------- messages ----------

  var errors = [];
  function showError(msg) {
    if (errors.indexOf(msg) < 0) errors.push(msg);
    var box = clear($('error'));
    errors.forEach(function (m) { box.appendChild(el('p', { text: m })); });
    box.hidden = false;
  }
  function clearError() { errors = []; clear($('error')).hidden = true; }
  function setStatus(text) { $('status').textContent = text || ''; }
  // data-loading="true|false" on a view lets a test wait for its data.
  function busy(id, on) { $(id).setAttribute('data-loading', on ? 'true' : 'false'); }

  // ---------- API ----------

  function ApiError(message, status) { this.message = message; this.status = status; }
  ApiError.prototype = Object.create(Error.prototype);

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  function outcomeText(body, status) {
    if (body && body.resourceType === 'OperationOutcome' && Array.isArray(body.issue) && body.issue.length) {
      return body.issue.map(function (i) { return i.diagnostics || i.code || i.severity; }).join('; ');
    }
    return 'HTTP ' + status;
  }

  // fetch with the bearer token; 401/403 -> back to sign-in; other errors -> ApiError with the diagnostics.
  function request(path, accept) {
    var t = token();
    if (!t) return Promise.reject(new ApiError('token rejected: not signed in', 401));
    return fetch(path, { headers: { Authorization: 'Bearer ' + t, Accept: accept }, cache: 'no-store' })
      .catch(function (e) { throw new ApiError('Network error calling ' + path + ': ' + e.message, 0); })
      .then(function (res) {
        if (res.ok) return res;
        return res.text().then(function (text) {
          var body = null;
          try { body = JSON.parse(text); } catch (e) { body = null; }
          var detail = outcomeText(body, res.status);
          if (res.status === 401 || res.status === 403) {
            signOut();
            throw new ApiError('token rejected (HTTP ' + res.status + '): ' + detail, res.status);
          }
          var by = new URLSearchParams(path.split('?')[1] || '').get('by');
          throw new ApiError(path.split('?')[0] + (by ? ' (by ' + by + ')' : '') + ': ' + detail, res.status);
        });
      });
  }

  function getJson(path) { return request(path, 'application/json').then(function (r) { return r.json(); }); }

  function query(params, withDates) {
    var q = new URLSearchParams();
    Object.keys(params).forEach(function (k) { q.set(k, params[k]); });
    if (withDates) {
      if ($('from').value) q.set('from', $('from').value);
      if ($('to').value) q.set('to', $('to').value);
    }
    var s = q.toString();
    return s ? '?' + s : '';
  }

  var REPORTS = {
    month: { path: '/api/v1/reports/reconciliation', params: { by: 'month' }, render: renderMonth },
    site: { path: '/api/v1/reports/reconciliation', params: { by: 'site' }, render: renderSite },
    denials: { path: '/api/v1/reports/denials', params: {}, render: renderDenials },
    aging: { path: '/api/v1/reports/aging', params: { by: 'payer' }, render: renderAging },
    sustainability: { path: '/api/v1/reports/sustainability', params: {}, render: renderSustainability },
    pps: { path: '/api/v1/reports/pps-gap', params: { by: 'month' }, render: renderPps }
  };

  function reportUrl(name) { var r = REPORTS[name]; return r.path + query(r.params, true); }

  function downloadCsv(name, button) {
    var url = reportUrl(name);
    button.disabled = true;
    request(url, 'text/csv')
      .then(function (res) {
        var cd = res.headers.get('Content-Disposition') || '';
        var m = /filename="?([^";]+)"?/i.exec(cd);
        var fallback = REPORTS[name].path.split('/').pop() + (REPORTS[name].params.by ? '-by-' + REPORTS[name].params.by : '') + '.csv';
        return res.blob().then(function (blob) { saveBlob(blob, m ? m[1] : fallback); });
      })
      .catch(handleError)
      .then(function () { button.disabled = false; });
  }

  function saveBlob(blob, filename) {
    var href = URL.createObjectURL(blob);
    var a = el('a', { href: href, download: filename, hidden: true });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(href); }, 10000);
  }

  function handleError(e) {
    if (e instanceof ApiError) showError(e.message);
    else { showError('Unexpected error: ' + (e && e.message ? e.message : e)); }
  }

  // ---------- charts ----------

  var COLORS = { expected: '#8da9c4', paid: '#2e7d32', denied: '#c62828', cost: '#9e9e9e', earned: '#1565c0' };
  var AGE_COLORS = ['#a5d6a7', '#fff59d', '#ffcc80', '#ef9a9a', '#b71c1c'];

  function drawChart(id, config) {
    if (charts[id]) { charts[id].destroy(); delete charts[id]; }
    if (typeof window.Chart !== 'function') { showError('Chart library did not load; tables are still shown.'); return; }
    var opts = config.options || (config.options = {});
    opts.responsive = true;
    opts.maintainAspectRatio = false;
    opts.animation = false;
    var valueAxis = opts.indexAxis === 'y' ? 'x' : 'y';
    opts.scales = opts.scales || {};
    var axis = opts.scales[valueAxis] || (opts.scales[valueAxis] = {});
    axis.beginAtZero = true;
    axis.ticks = { precision: 0, callback: moneyTick };
    opts.plugins = opts.plugins || {};
    opts.plugins.tooltip = { callbacks: { label: function (ctx) {
      return ctx.dataset.label + ': ' + money(ctx.raw);
    } } };
    charts[id] = new window.Chart($(id), config);
  }

  function pick(rows, field) { return rows.map(function (r) { return r[field]; }); }

  // ---------- report renderers ----------

  var RECON_FIELDS = ['billed_cents', 'expected_cents', 'paid_cents', 'contractual_cents', 'patient_responsibility_cents',
    'denied_cents', 'other_adjustment_cents', 'outstanding_cents'];

  function renderMonth(data) {
    var rows = data.rows || [];
    drawChart('chart-month', {
      type: 'bar',
      data: { labels: pick(rows, 'label'), datasets: [
        { label: 'Expected', data: pick(rows, 'expected_cents'), backgroundColor: COLORS.expected },
        { label: 'Paid', data: pick(rows, 'paid_cents'), backgroundColor: COLORS.paid },
        { label: 'Denied', data: pick(rows, 'denied_cents'), backgroundColor: COLORS.denied }
      ] }
    });
  }

  function reconCells(row) {
    return [numTd(row.claims)].concat(RECON_FIELDS.map(function (f) { return moneyTd(row[f], f); }));
  }

  function renderSite(data) {
    var table = $('recon-site');
    var tbody = clear(table.tBodies[0]);
    var tfoot = clear(table.tFoot);
    (data.rows || []).forEach(function (row) {
      var link = el('button', { type: 'button', className: 'link', 'data-site': row.key, text: row.label || row.key,
        'aria-label': 'Claims of ' + (row.label || row.key) });
      link.addEventListener('click', function () { openSite(row); });
      tbody.appendChild(el('tr', { 'data-key': row.key }, [el('th', { scope: 'row' }, [link])].concat(reconCells(row))));
    });
    if (!(data.rows || []).length) emptyRow(tbody, 10, 'No claims in this period.', data);
    if (data.total) {
      tfoot.appendChild(el('tr', { id: 'recon-site-total', 'data-key': 'total' },
        [el('th', { scope: 'row', text: data.total.label || 'Total' })].concat(reconCells(data.total))));
    }
  }

  function renderDenials(data) {
    var rows = data.rows || [];
    var table = $('denials');
    var tbody = clear(table.tBodies[0]);
    rows.forEach(function (r) {
      tbody.appendChild(el('tr', {}, [td(r.group), td(r.carc), td(r.description), numTd(r.claims), numTd(r.lines),
        moneyTd(r.amount_cents, 'amount_cents'), td(codeList(r.remarks), 'remarks')]));
    });
    if (!rows.length) emptyRow(tbody, 7, 'No denials in this period.', data);
    clear(table.tFoot).appendChild(el('tr', {}, [el('th', { scope: 'row', colspan: 5, text: 'Total' }),
      moneyTd(data.total_cents, 'total_cents'), td('')]));
    drawChart('chart-denials', {
      type: 'bar',
      data: { labels: rows.map(function (r) { return r.group + '-' + r.carc; }),
        datasets: [{ label: 'Denied', data: pick(rows, 'amount_cents'), backgroundColor: COLORS.denied }] },
      options: { indexAxis: 'y', plugins: { legend: { display: false } } }
    });
  }

  var AGE_FIELDS = [['days_0_30_cents', '0–30 days'], ['days_31_60_cents', '31–60 days'], ['days_61_90_cents', '61–90 days'],
    ['days_91_120_cents', '91–120 days'], ['days_over_120_cents', 'Over 120 days']];

  function agingCells(row) {
    return [numTd(row.claims)].concat(AGE_FIELDS.map(function (f) { return moneyTd(row[f[0]], f[0]); }),
      [moneyTd(row.outstanding_cents, 'outstanding_cents')]);
  }

  function renderAging(data) {
    var rows = data.rows || [];
    var table = $('aging');
    var tbody = clear(table.tBodies[0]);
    rows.forEach(function (r) {
      tbody.appendChild(el('tr', { 'data-key': r.key }, [el('th', { scope: 'row', text: r.label || r.key })].concat(agingCells(r))));
    });
    if (!rows.length) emptyRow(tbody, 8, 'Nothing outstanding.', data);
    var tfoot = clear(table.tFoot);
    if (data.total) {
      tfoot.appendChild(el('tr', { 'data-key': 'total' }, [el('th', { scope: 'row', text: data.total.label || 'Total' })].concat(agingCells(data.total))));
    }
    $('aging-as-of').textContent = data.as_of ? 'Age of outstanding balances as of ' + data.as_of + ', by payer.' : '';
    drawChart('chart-aging', {
      type: 'bar',
      data: { labels: rows.map(function (r) { return r.label || r.key; }),
        datasets: AGE_FIELDS.map(function (f, i) { return { label: f[1], data: pick(rows, f[0]), backgroundColor: AGE_COLORS[i] }; }) },
      options: { scales: { x: { stacked: true }, y: { stacked: true } } }
    });
  }

  function notBillable(list) {
    if (!list || !list.length) return td('—');
    return el('td', { className: 'reasons' }, list.map(function (n) { return el('div', { text: n.reason + ': ' + count(n.sessions) }); }));
  }

  function pct(s) { return s === null || s === undefined ? '—' : String(s) + '%'; }

  function renderSustainability(data) {
    var rows = data.rows || [];
    var tbody = clear($('sustainability').tBodies[0]);
    rows.forEach(function (r) {
      tbody.appendChild(el('tr', { 'data-key': r.site + '/' + r.month }, [
        el('th', { scope: 'row', text: r.site_name || r.site }), td(r.month, 'nowrap'), numTd(r.sessions), numTd(r.billable_sessions),
        td(pct(r.billable_share_percent), 'num'), numTd(r.billable_minutes), moneyTd(r.earned_cents, 'earned_cents'),
        moneyTd(r.paid_cents, 'paid_cents'), moneyTd(r.cost_cents, 'cost_cents'), moneyTd(r.margin_cents, 'margin_cents'),
        td(pct(r.covered_percent), 'num'), notBillable(r.not_billable)]));
    });
    if (!rows.length) emptyRow(tbody, 12, 'No sessions in this period.', data);
    drawChart('chart-sustainability', {
      type: 'bar',
      data: { labels: rows.map(function (r) { return (r.site_name || r.site) + ' ' + r.month; }), datasets: [
        { label: 'Earned', data: pick(rows, 'earned_cents'), backgroundColor: COLORS.earned },
        { label: 'Cost', data: pick(rows, 'cost_cents'), backgroundColor: COLORS.cost }
      ] }
    });
  }

  function ppsCells(r) {
    return [numTd(r.visits), moneyTd(r.expected_cents, 'expected_cents'), moneyTd(r.paid_cents, 'paid_cents'), moneyTd(r.gap_cents, 'gap_cents')];
  }

  function renderPps(data) {
    var rows = data.rows || [];
    var table = $('pps-gap');
    var tbody = clear(table.tBodies[0]);
    rows.forEach(function (r) {
      tbody.appendChild(el('tr', { 'data-key': r.key }, [el('th', { scope: 'row', text: r.label || r.key })].concat(ppsCells(r))));
    });
    if (!rows.length) emptyRow(tbody, 5, 'No PPS visits in this period.', data);
    var tfoot = clear(table.tFoot);
    if (data.total) {
      tfoot.appendChild(el('tr', { 'data-key': 'total' }, [el('th', { scope: 'row', text: data.total.label || 'Total' })].concat(ppsCells(data.total))));
    }
  }

  function loadReports() {
    var gen = ++generation;
    clearError();
    var from = $('from').value, to = $('to').value;
    if (from && to && from > to) { showError('"From" must not be after "To".'); return Promise.resolve(); }
    setStatus('Loading reports…');
    busy('reports-view', true);
    var names = Object.keys(REPORTS);
    return Promise.all(names.map(function (name) {
      return getJson(reportUrl(name)).then(function (data) {
        if (gen === generation) REPORTS[name].render(data);
      }).catch(function (e) {
        if (gen === generation && token()) {
          handleError(e);
          try { REPORTS[name].render({ rows: [], failed: true }); } catch (ignored) { /* keep the first error */ }
        }
        else if (e instanceof ApiError && (e.status === 401 || e.status === 403)) showError(e.message);
      });
    })).then(function () {
      if (gen !== generation) return;
      setStatus(!token() ? '' : errors.length ? 'Some reports could not be loaded.' : 'Reports loaded.');
      busy('reports-view', false);
    });
  }

  // ---------- drill-down ----------

  function showView(name) {
    ['reports-view', 'site-view', 'claim-view'].forEach(function (v) { $(v).hidden = v !== name; });
    $('filters').hidden = name !== 'reports-view';
    window.scrollTo(0, 0);
  }

  function openSite(row) {
    currentSite = row;
    clearError();
    $('site-heading').textContent = 'Claims of ' + (row.label || row.key);
    var tbody = clear($('site-claims').tBodies[0]);
    showView('site-view');
    setStatus('Loading claims…');
    busy('site-view', true);
    getJson('/api/v1/claims' + query({ site: row.key, _count: '1000' }, false)).then(function (claims) {
      if (currentSite !== row) return;
      clear(tbody);
      (claims || []).forEach(function (c) {
        var link = el('button', { type: 'button', className: 'link', 'data-claim': c.id, text: c.claim_number });
        link.addEventListener('click', function () { openClaim(c.id); });
        tbody.appendChild(el('tr', { 'data-id': c.id }, [el('th', { scope: 'row' }, [link]), td(c.service_date), td(c.program),
          td(c.payer), td(c.status + (c.active === false ? ' (inactive)' : '')), moneyTd(c.charge_cents, 'charge_cents'),
          moneyTd(c.expected_cents, 'expected_cents')]));
      });
      if (!claims || !claims.length) emptyRow(tbody, 7, 'No claims for this site.');
      setStatus(count((claims || []).length) + ' claims.');
    }).catch(handleError).then(function () { if (currentSite === row) busy('site-view', false); });
  }

  function dl(pairs) {
    var list = el('dl', { className: 'facts' });
    pairs.forEach(function (p) {
      list.appendChild(el('div', { className: p[2] === 'wide' ? 'wide' : null }, [el('dt', { text: p[0] }),
        p[2] === 'money' ? el('dd', { 'data-cents': p[1], 'data-field': p[3], text: money(p[1]) })
          : el('dd', { text: p[1] === null || p[1] === undefined || p[1] === '' ? '—' : String(p[1]) })]));
    });
    return list;
  }

  function table(caption, headers, rows, cls) {
    var head = el('tr', {}, headers.map(function (h) {
      return el('th', { scope: 'col', className: /^(Charge|Expected|Paid|Amount|Units|Qty)/.test(h) ? 'num' : null, text: h });
    }));
    var body = el('tbody', {}, rows.length ? rows : [el('tr', { className: 'empty' }, [el('td', { colspan: headers.length, text: 'None.' })])]);
    return el('div', { className: 'table-wrap' }, [el('table', { className: cls || null },
      [el('caption', { text: caption }), el('thead', {}, [head]), body])]);
  }

  function adjustmentRows(adjs) {
    return (adjs || []).map(function (a) {
      return el('tr', {}, [td(a.group), td(a.carc), td(a.description), moneyTd(a.amount_cents, 'amount_cents'),
        td(a.quantity === null || a.quantity === undefined ? '—' : String(a.quantity), 'num')]);
    });
  }

  var ADJ_HEADERS = ['Group', 'CARC', 'Description', 'Amount', 'Qty'];

  function renderClaim(c) {
    $('claim-heading').textContent = 'Claim ' + c.claim_number;
    var detail = clear($('claim-detail'));
    detail.appendChild(dl([
      ['Claim number', c.claim_number], ['Status', c.status + (c.active === false ? ' (inactive)' : '')],
      ['Date of service', c.service_date], ['Program', c.program], ['Payer', c.payer], ['Biller', c.biller],
      ['Frequency', c.frequency], ['Payer claim number', c.payer_claim_number], ['Replaces', c.replaces],
      ['Session', c.session_id + ' v' + c.session_version], ['Batch', c.batch_id],
      ['Charge', c.charge_cents, 'money', 'charge_cents'], ['Expected', c.expected_cents, 'money', 'expected_cents'],
      ['Balance', c.balance_cents, 'money', 'balance_cents']
    ]));
    detail.appendChild(table('Service lines', ['Line', 'Line id', 'Revenue code', 'Code', 'Modifiers', 'Units', 'Charge', 'Expected'],
      (c.lines || []).map(function (l) {
        return el('tr', {}, [td(String(l.line)), td(l.line_id), td(l.revenue_code), td(l.code + (l.informational ? ' (informational)' : '')),
          td((l.modifiers || []).join(', ') || '—'), numTd(l.units), moneyTd(l.charge_cents, 'charge_cents'), moneyTd(l.expected_cents, 'expected_cents')]);
      })));
    detail.appendChild(table('Lifecycle events', ['At', 'From', 'To', 'Actor', 'Reason'],
      (c.events || []).map(function (e) {
        return el('tr', {}, [td(e.at), td(e.from), td(e.to), td(e.actor), td(e.reason)]);
      })));

    var pay = clear($('claim-payments'));
    var remits = c.remittances || [];
    if (!remits.length) pay.appendChild(el('p', { className: 'hint', text: 'No 835 payment has been posted for this claim.' }));
    remits.forEach(function (r) {
      var box = el('article', { className: 'remit' + (r.reversal ? ' reversal' : ''), 'data-remittance': r.remittance_id });
      box.appendChild(el('h3', { text: 'Payment ' + (r.trace_number || r.remittance_id) + ' on ' + (r.payment_date || '—') + (r.reversal ? ' (reversal)' : '') }));
      box.appendChild(dl([
        ['Claim status', (r.status || '—') + (r.status_text ? ' — ' + r.status_text : '')], ['Payer claim number', r.payer_claim_number],
        ['Charge', r.charge_cents, 'money', 'charge_cents'], ['Paid', r.paid_cents, 'money', 'paid_cents'],
        ['Patient responsibility', r.patient_responsibility_cents, 'money', 'patient_responsibility_cents'],
        ['Remark codes', codeList(r.remarks), 'wide']
      ]));
      box.appendChild(table('Claim adjustments', ADJ_HEADERS, adjustmentRows(r.adjustments)));
      var lineRows = [];
      (r.lines || []).forEach(function (l) {
        lineRows.push(el('tr', { className: 'svc' }, [td(String(l.line)),
          td(l.matched_line === null || l.matched_line === undefined ? 'unmatched' : String(l.matched_line) + (l.matched_by ? ' (' + l.matched_by + ')' : '')),
          td(l.code + ((l.modifiers || []).length ? ':' + l.modifiers.join(':') : '')), td(l.service_date),
          moneyTd(l.charge_cents, 'charge_cents'), moneyTd(l.paid_cents, 'paid_cents'), td(codeList(l.remarks))]));
        (l.adjustments || []).forEach(function (a) {
          lineRows.push(el('tr', { className: 'adj' }, [td(''), td('adjustment', 'muted'), td(a.group + '-' + a.carc),
            el('td', { colspan: 2, text: a.description || '—' }), moneyTd(a.amount_cents, 'amount_cents'),
            td(a.quantity === null || a.quantity === undefined ? '' : 'qty ' + a.quantity)]));
        });
      });
      box.appendChild(table('Service lines paid (line adjustments indented)',
        ['Line', 'Matched claim line', 'Code', 'Date of service', 'Charge', 'Paid / adj.', 'Remark codes'], lineRows, 'svc-lines'));
      pay.appendChild(box);
    });
  }

  function openClaim(id) {
    clearError();
    clear($('claim-detail'));
    clear($('claim-payments'));
    $('claim-heading').textContent = 'Claim';
    showView('claim-view');
    setStatus('Loading claim…');
    busy('claim-view', true);
    var ticket = ++claimTicket;
    getJson('/api/v1/claims/' + encodeURIComponent(id)).then(function (c) {
      if (ticket !== claimTicket) return;
      renderClaim(c);
      setStatus('Claim ' + c.claim_number + ' loaded.');
    }).catch(handleError).then(function () { if (ticket === claimTicket) busy('claim-view', false); });
  }

  // ---------- sign in / out ----------

  function showSignedIn(signedIn) {
    $('signin-view').hidden = signedIn;
    $('dashboard').hidden = !signedIn;
    $('sign-out').hidden = !signedIn;
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    generation++;
    currentSite = null;
    Object.keys(charts).forEach(function (id) { charts[id].destroy(); delete charts[id]; });
    showSignedIn(false);
    showView('reports-view');
    setStatus('');
    $('token').value = '';
    $('token').focus();
  }

  function init() {
    $('signin-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      var t = $('token').value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $('token').value = '';
      showSignedIn(true);
      showView('reports-view');
      loadReports();
    });
    $('sign-out').addEventListener('click', function () { clearError(); signOut(); });
    $('filters').addEventListener('submit', function (ev) { ev.preventDefault(); loadReports(); });
    $('back-to-reports').addEventListener('click', function () { currentSite = null; clearError(); showView('reports-view'); setStatus(''); });
    $('back-to-site').addEventListener('click', function () {
      clearError();
      if (currentSite) { showView('site-view'); setStatus(''); } else showView('reports-view');
    });
    Array.prototype.forEach.call(document.querySelectorAll('button[data-csv]'), function (b) {
      b.addEventListener('click', function () { downloadCsv(b.getAttribute('data-csv'), b); });
    });
    if (token()) { showSignedIn(true); showView('reports-view'); loadReports(); } else showSignedIn(false);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
