// Hash routes such as #/incidents/<id>?x=1: the path picks a page, the query is its state.

export function currentRoute() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, queryText = ''] = hash.split('?');
  return { path: path || '/', query: new URLSearchParams(queryText) };
}

export function navigate(path) {
  location.hash = path;
}

/**
 * Finds the first route whose pattern matches; its capture groups become params. Null when
 * none matches, or when a param is not valid percent-encoding (a mangled link).
 */
export function match(routes, path) {
  for (const route of routes) {
    const found = route.pattern.exec(path);
    if (!found) continue;
    try {
      return { route, params: found.slice(1).map(decodeURIComponent) };
    } catch (error) {
      if (error instanceof URIError) return null;
      throw error;
    }
  }
  return null;
}
