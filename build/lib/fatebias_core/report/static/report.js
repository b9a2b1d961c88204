// Sort by clicking a header (numbers by their data-v value, text otherwise); toggle non-hits.
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var asc=!th.classList.contains('asc');
    t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
    th.classList.add(asc?'asc':'desc');
    var key=function(r){var c=r.cells[i],v=c.dataset.v!==undefined?c.dataset.v:c.textContent,n=parseFloat(v);
      return isNaN(n)?v.toLowerCase():n;};
    var rows=Array.prototype.slice.call(t.tBodies[0].rows);
    rows.sort(function(a,b){var x=key(a),y=key(b);
      if(typeof x!==typeof y){x=String(x);y=String(y);}
      return (x<y?-1:x>y?1:0)*(asc?1:-1);});
    rows.forEach(function(r){t.tBodies[0].appendChild(r);});
  });});
});
document.querySelectorAll('input.hits-only').forEach(function(only){only.addEventListener('change',function(){
  document.querySelectorAll('#'+only.dataset.table+' tbody tr.nohit').forEach(function(r){r.hidden=only.checked;});});});
