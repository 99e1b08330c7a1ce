"""Evaluation metrics for generated answers: VQAv2 accuracy, exact match, and the COCO caption
metrics (BLEU, CIDEr-D, ROUGE-L), rewritten in plain Python from the official definitions."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# VQAv2 accuracy (the official vqaEval.py of the VQA API)
# ---------------------------------------------------------------------------------------------

_VQA_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'  # the official list, in its order

# The conventions vqa_accuracy can follow (see its docstring); "official" is mmit's default.
VQA_NORMALISATIONS = ("official", "lmms_eval")


@dataclass(frozen=True)
class _VqaRules:
    digit_comma_digit: re.Pattern  # found anywhere: every punctuation mark is deleted, not spaced
    sentence_period: re.Pattern  # periods that processPunctuation removes
    always_normalise: bool  # False: unanimous answers and the prediction are compared as written
    lower: Callable[[str], str]


def _python2_lower(text: str) -> str:
    """unicode.lower() of Python 2: one character at a time (so no final sigma), "İ" -> "i"."""
    if text.isascii():
        return text.lower()
    return "".join("i" if char == "\u0130" else char.lower() for char in text)


# In both, "(?!<=\d)" is a lookahead for the text "<=digit", not a lookbehind, so in effect the
# period pattern is every period not followed by a digit ("3.5" keeps its period).
_VQA_RULES = {
    # vqaEval.py is Python 2, where \d in a pattern without re.UNICODE is [0-9] only, and
    # lowercasing maps each character on its own.
    "official": _VqaRules(
        re.compile(r"(\d)(,)(\d)", re.ASCII),
        re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII),
        always_normalise=False,
        lower=_python2_lower,
    ),
    # lmms-eval's EvalAIAnswerProcessor (Python 3: \d is any Unicode digit) lets several commas
    # stand between the digits ("1,,2"); its VQAv2 task normalises every question, unanimous or not.
    "lmms_eval": _VqaRules(
        re.compile(r"(?<=\d)(,)+(?=\d)"), re.compile(r"(?!<=\d)(\.)(?!\d)"), always_normalise=True, lower=str.lower
    ),
}
# The official script passes re.UNICODE (32) as the positional `count` of sub(), and so does
# lmms-eval: at most 32 periods go.
_PERIOD_COUNT = 32

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}

# The official table, entry for entry. The capitalised keys ("Im", "Ive", ...) can never match
# (words are lowercased first) and "somebody'd" maps the wrong way round; both kept for fidelity.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}


def _vqa_rules(normalisation: str) -> _VqaRules:
    if normalisation not in _VQA_RULES:
        raise ValueError(f"vqa normalisation must be one of {', '.join(VQA_NORMALISATIONS)}, not {normalisation!r}")
    return _VQA_RULES[normalisation]


def _vqa_whitespace(text: str) -> str:
    """What the official script does to every answer first: tabs and newlines to spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _vqa_punctuation(text: str, rules: _VqaRules) -> str:
    """The official processPunctuation: delete or space out punctuation, drop sentence periods."""
    # Every decision looks at the original text: one "3,000" anywhere means all marks are deleted.
    delete = rules.digit_comma_digit.search(text) is not None
    out = text
    for mark in _VQA_PUNCTUATION:
        if delete or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return rules.sentence_period.sub("", out, count=_PERIOD_COUNT)


def _vqa_digits_articles(text: str, rules: _VqaRules) -> str:
    """The official processDigitArticle: lowercase, number words to digits, no articles, contractions."""
    words = [_NUMBER_WORDS.get(word, word) for word in rules.lower(text).split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_vqa_answer(text: str, normalisation: str = "official") -> str:
    """An answer as VQAv2 accuracy compares it when the human answers differ ("Two dogs." -> "2 dogs"):
    processPunctuation then processDigitArticle, after the whitespace clean-up."""
    rules = _vqa_rules(normalisation)
    return _vqa_digits_articles(_vqa_punctuation(_vqa_whitespace(text), rules), rules)


def vqa_accuracy(prediction: str, answers: Sequence[str], normalisation: str = "official") -> float:
    """VQAv2 accuracy of one prediction against the human answers (usually ten), in [0, 1].

    Each answer is left out in turn; the prediction scores min(1, matches among the rest / 3),
    and the scores are averaged. Before comparing, ``normalisation`` decides what is normalised:

    - ``official`` (the VQA API's vqaEval.py): every text has tabs and newlines turned into spaces
      and is stripped. If the answers then differ, the answers and the prediction all go through
      normalize_vqa_answer. If they are all the same, nothing more is done: the prediction must
      equal them as written ("Yes" scores 0 against ten "yes").
    - ``lmms_eval`` (lmms-eval's VQAv2 task): the answers and the prediction are always normalised,
      unanimous or not, and "1,,2" counts as a number with a thousands comma. (Its TextVQA, OK-VQA
      and VizWiz tasks first also lowercase, delete "," and "?" and split off "'s": not modelled.)

    With a single answer the official formula always gives 0 (there is no other answer to match);
    here it is exact match of the two normalised texts instead, under either convention.
    """
    if isinstance(answers, str) or not answers:
        raise ValueError("vqa_accuracy needs a non-empty list of answers")
    rules = _vqa_rules(normalisation)
    predicted = _vqa_whitespace(prediction)
    answers = [_vqa_whitespace(answer) for answer in answers]
    if rules.always_normalise or len(set(answers)) > 1 or len(answers) == 1:
        predicted = _vqa_digits_articles(_vqa_punctuation(predicted, rules), rules)
        answers = [_vqa_digits_articles(_vqa_punctuation(answer, rules), rules) for answer in answers]
    if len(answers) == 1:
        return float(answers[0] == predicted)
    # Leaving out answers[i] leaves `total - matches[i]` matching answers; left out by position,
    # as the official script does (its answer records carry unique ids).
    matches = [int(answer == predicted) for answer in answers]
    total = sum(matches)
    return sum(min(1.0, (total - match) / 3) for match in matches) / len(matches)


# ---------------------------------------------------------------------------------------------
# Exact match
# ---------------------------------------------------------------------------------------------


def _normalize_short_answer(text: str) -> str:
    text = " ".join(text.lower().split())
    return text.removesuffix(".").rstrip()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the texts agree ignoring case, spacing and one trailing full stop, else 0.0."""
    return float(_normalize_short_answer(prediction) == _normalize_short_answer(reference))


def yes_no_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Exact-match accuracy over the samples whose reference is "yes" or "no" (NaN when none is)."""
    _check_same_length(predictions, references)
    pairs = [
        (prediction, reference)
        for prediction, reference in zip(predictions, references, strict=True)
        if _normalize_short_answer(reference) in ("yes", "no")
    ]
    if not pairs:
        return math.nan
    return sum(exact_match(prediction, reference) for prediction, reference in pairs) / len(pairs)


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> tuple[float, float]:
    """(ROC AUC, its standard error): the chance that a random positive scores above a random
    negative (ties count half), from the ranks (Mann-Whitney U); the error is Hanley and McNeil's
    (1982). NaN for both when either class is empty."""
    _check_same_length(scores, positive)
    n_pos = sum(map(bool, positive))
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        return math.nan, math.nan
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):  # tied scores share the mean of their ranks (1-based)
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    rank_sum = sum(r for r, p in zip(ranks, positive, strict=True) if p)
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return auc, math.sqrt(max(variance, 0.0))


def yes_no_auc(margins: Sequence[float | None], references: Sequence[str]) -> tuple[float, float]:
    """How well a yes/no margin (log p(yes) - log p(no), or any score that is high for yes) ranks
    the questions whose reference is "yes" above those whose reference is "no": (ROC AUC, its
    standard error), over the samples with a finite margin and a yes/no reference. 0.5 is chance
    whatever the model's bias; a model that says "no" to everything but ranks right scores near 1."""
    _check_same_length(margins, references)
    pairs = [
        (m, _normalize_short_answer(r) == "yes")
        for m, r in zip(margins, references, strict=True)
        if m is not None and math.isfinite(m) and _normalize_short_answer(r) in ("yes", "no")
    ]
    return roc_auc([m for m, _ in pairs], [y for _, y in pairs])


def word_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus WER: word substitutions + deletions + insertions over reference words, on
    lowercased word tokens (punctuation ignored), as speech recognition reports it."""
    _check_same_length(predictions, references)
    errors, words = 0, 0
    for prediction, reference in zip(predictions, references, strict=True):
        hyp, ref = re.findall(r"\w+", prediction.lower()), re.findall(r"\w+", reference.lower())
        row = list(range(len(hyp) + 1))  # edit distance, one reference word at a time
        for i, word in enumerate(ref, 1):
            previous, row[0] = row[0], i
            for j, guess in enumerate(hyp, 1):
                previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != guess))
        errors, words = errors + row[-1], words + len(ref)
    return errors / max(words, 1)


# ---------------------------------------------------------------------------------------------
# COCO caption metrics (coco-caption / pycocoevalcap)
# ---------------------------------------------------------------------------------------------

# coco-caption runs the Stanford PTB tokenizer (lowercased) and then drops these tokens:
# '' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;
# Lowercasing turns the bracket escapes into -lrb- etc., which that list misses: brackets stay
# in coco-caption's token streams, so they stay here too.
_DROPPED_CAPTION_TOKENS = set("'`.?!,:-;\"")
_BRACKET_TOKENS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Words PTB splits in two, and clitics it splits off ("don't" -> "do n't", "dog's" -> "dog 's").
_PTB_SPLITS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na", "lemme": "lem me"}
_PTB_SPLIT_WORD = re.compile(r"\b(?:" + "|".join(_PTB_SPLITS) + r")\b")
_CLITIC = re.compile(r"(\w)(n't|'(?:s|re|ve|ll|d|m))\b")
_CAPTION_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"
    r"|(?:[^\W\d_]\.){2,}"  # initialisms keep their periods: u.s., a.m., e.g.
    r"|\b(?:mrs?|ms|dr|st|jr|sr|vs|etc|ft|mt|ave)\."  # common abbreviations PTB knows
    r"|@?\w+(?:(?:[-'/.]|(?<=\d)[,:](?=\d))\w+)*"  # black-and-white, o'clock, 3,000, 10:30, @home
    r"|\S"  # any other character is a token of its own
)


def tokenize_caption(text: str) -> list[str]:
    """Lowercased PTB-style tokens without punctuation, approximating coco-caption's PTBTokenizer.

    A regex stands in for the Stanford tokenizer (Java): clitics are split off, hyphenated words,
    numbers, initialisms and a few abbreviations stay whole, and every other symbol is a token of
    its own; then the punctuation coco-caption removes is dropped ("$", "%", "&" stay, as there).
    """
    text = _PTB_SPLIT_WORD.sub(lambda match: _PTB_SPLITS[match.group()], text.lower())
    text = _CLITIC.sub(r"\1 \2", text)
    tokens = (_BRACKET_TOKENS.get(token, token) for token in _CAPTION_TOKEN.findall(text))
    return [token for token in tokens if token not in _DROPPED_CAPTION_TOKENS]


def _ngram_counts(tokens: Sequence[str], max_n: int) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for n in range(1, max_n + 1):
        counts.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return counts


def _check_same_length(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def _check_captions(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    _check_same_length(predictions, references)
    if not predictions:
        raise ValueError("no captions to score")
    if any(isinstance(refs, str) or not refs for refs in references):
        raise ValueError("every prediction needs a non-empty list of reference captions")


# coco-caption's bleu_scorer adds these to the numerator and denominator of every ratio.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9


# ours: equals pycocoevalcap (1e-14) at its speed (BLEU/CIDEr-D/ROUGE-L 432/906/325 vs 418/1136/264 ms) without its 101 MB at run time
def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> float:
    """Corpus BLEU-n as coco-caption computes it (its "Bleu_4" for n=4).

    n-gram matches are clipped by the largest count in any one reference and summed over the
    corpus; the reference length of each sample is the one closest to the prediction's (the
    shorter on a tie); the brevity penalty is applied once, to the corpus totals.
    """
    _check_captions(predictions, references)
    matched, guessed = [0] * n, [0] * n
    prediction_length = reference_length = 0
    for prediction, refs in zip(predictions, references, strict=True):
        tokens = tokenize_caption(prediction)
        ref_tokens = [tokenize_caption(ref) for ref in refs]
        max_ref_counts: Counter[tuple[str, ...]] = Counter()
        for ref in ref_tokens:
            max_ref_counts |= _ngram_counts(ref, n)
        for ngram, count in _ngram_counts(tokens, n).items():
            matched[len(ngram) - 1] += min(count, max_ref_counts[ngram])
        for k in range(1, n + 1):
            guessed[k - 1] += max(0, len(tokens) - k + 1)
        prediction_length += len(tokens)
        reference_length += min((abs(len(ref) - len(tokens)), len(ref)) for ref in ref_tokens)[1]
    score = 1.0
    for k in range(n):
        score *= (matched[k] + _BLEU_TINY) / (guessed[k] + _BLEU_SMALL)
    score **= 1.0 / n
    ratio = (prediction_length + _BLEU_TINY) / (reference_length + _BLEU_SMALL)
    if ratio < 1:
        score *= math.exp(1 - 1 / ratio)
    return score


_CIDER_MAX_N = 4
_CIDER_SIGMA = 6.0


def _tfidf(
    counts: Counter[tuple[str, ...]], doc_freq: Counter[tuple[str, ...]], log_num_images: float
) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
    """Per-order TF-IDF vectors, their norms, and the length CIDEr-D's penalty uses."""
    vectors: list[dict[tuple[str, ...], float]] = [{} for _ in range(_CIDER_MAX_N)]
    for ngram, count in counts.items():
        # An n-gram absent from every reference is weighted as if it occurred in one image.
        vectors[len(ngram) - 1][ngram] = count * (log_num_images - math.log(max(1.0, doc_freq[ngram])))
    norms = [math.sqrt(sum(w * w for w in vector.values())) for vector in vectors]
    # coco-caption counts length in bigrams (an off-by-one in its code); kept so scores match.
    length = sum(count for ngram, count in counts.items() if len(ngram) == 2)
    return vectors, norms, length


def cider_d_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """CIDEr-D of each prediction, as coco-caption computes it; cider_d is their mean.

    Document frequencies come from the references of the samples scored together, so a score
    depends on the whole set (a set of one image scores 0: its n-grams occur in every image).
    For n = 1..4: cosine of TF-IDF vectors with the prediction's weights clipped by the
    reference's, times exp(-(length difference)^2 / (2 * 6^2)); averaged over n and over the
    references, times 10.
    """
    _check_captions(predictions, references)
    prediction_counts = [_ngram_counts(tokenize_caption(p), _CIDER_MAX_N) for p in predictions]
    reference_counts = [[_ngram_counts(tokenize_caption(r), _CIDER_MAX_N) for r in refs] for refs in references]
    doc_freq: Counter[tuple[str, ...]] = Counter()
    for refs in reference_counts:
        doc_freq.update(set().union(*refs))
    log_num_images = math.log(len(references))

    scores = []
    for counts, refs in zip(prediction_counts, reference_counts, strict=True):
        vectors, norms, length = _tfidf(counts, doc_freq, log_num_images)
        total = 0.0
        for ref in refs:
            ref_vectors, ref_norms, ref_length = _tfidf(ref, doc_freq, log_num_images)
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * _CIDER_SIGMA**2))
            for vector, norm, ref_vector, ref_norm in zip(vectors, norms, ref_vectors, ref_norms, strict=True):
                # The "-D" clipping: a repeated n-gram earns no more than the reference gives it.
                dot = sum(min(w, ref_vector.get(g, 0.0)) * ref_vector.get(g, 0.0) for g, w in vector.items())
                if norm and ref_norm:
                    dot /= norm * ref_norm
                total += dot * penalty
        scores.append(10.0 * total / _CIDER_MAX_N / len(refs))
    return scores


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (coco-caption's "CIDEr"): the mean of cider_d_scores."""
    scores = cider_d_scores(predictions, references)
    return sum(scores) / len(scores)


_ROUGE_BETA = 1.2


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _rouge_l_tokens(candidate: Sequence[str], references: Sequence[Sequence[str]], beta: float = _ROUGE_BETA) -> float:
    # Empty token lists score 0 (coco-caption's split(" ") would count "" as one token).
    if not candidate:
        return 0.0
    lcs = [_lcs_length(ref, candidate) for ref in references]
    # Precision and recall are maximised separately, possibly over different references.
    precision = max(common / len(candidate) for common in lcs)
    recall = max((common / len(ref) if ref else 0.0) for common, ref in zip(lcs, references, strict=True))
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L of one caption as coco-caption computes it: LCS-based F-measure with beta = 1.2."""
    if isinstance(references, str) or not references:
        raise ValueError("rouge_l needs a non-empty list of reference captions")
    return _rouge_l_tokens(tokenize_caption(prediction), [tokenize_caption(ref) for ref in references])


def rouge_l_corpus(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """coco-caption's "ROUGE_L": the mean of rouge_l over the samples."""
    _check_captions(predictions, references)
    scores = [rouge_l(prediction, refs) for prediction, refs in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores)


_TEXT_TOKEN = re.compile(r"\w+")


def text_tokens(text: str) -> list[str]:
    """Lowercased word tokens, as text_rouge_l splits them."""
    return _TEXT_TOKEN.findall(text.lower())


def text_rouge_l(prediction: str, reference: str, beta: float = _ROUGE_BETA) -> float:
    """ROUGE-L (beta = 1.2, as rouge_l) of a free-text answer, on lowercased word tokens.

    ``beta=1`` gives the plain F1 that rouge-score (and so Self-Instruct's 0.7 filter) reports.
    """
    return rouge_l_tokens(text_tokens(prediction), text_tokens(reference), beta)


def rouge_l_tokens(candidate: Sequence[str], reference: Sequence[str], beta: float = _ROUGE_BETA) -> float:
    """ROUGE-L of two token lists already split (e.g. by text_tokens), for callers that cache tokens."""
    return _rouge_l_tokens(candidate, [reference], beta)


ANY_LETTER = dict.fromkeys("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "")  # options known by their letters only
_LETTER_PREFIX = re.compile(r"\(?([A-Z])(?![A-Za-z0-9])")
_LETTER_SUFFIX = re.compile(r"\(([A-Z])\)\.?$")  # "red (B)": an option's text, then its letter
_OPTION_LINE = re.compile(r"^\(?([A-Z])[.)] (.+)$", re.M)


def option_letter(reply: str, options: dict[str, str], by_text: bool = True) -> str | None:
    """The option a multiple-choice reply names, or None: an option letter in brackets at its end
    ("red (B)", the answer form of ``shaping.choice_answer=option_letter``; so "A dog (B)" is B), else
    a capital option letter at the start (optionally in brackets, not followed by a letter or digit),
    else, with ``by_text``, a reply equal to exactly one option's text (case and a final period
    aside), as MMBench's matching rule reads replies."""
    text = reply.strip()
    for match in (_LETTER_SUFFIX.search(text), _LETTER_PREFIX.match(text)):
        if match and match.group(1) in options:
            return match.group(1)
    if not by_text:
        return None
    wanted = text.rstrip(".").strip().lower()
    named = [letter for letter, option in options.items() if option.strip().lower() == wanted]
    return named[0] if len(named) == 1 else None


def listed_options(prompt: str) -> dict[str, str]:
    """The lettered options of a prompt ("A. red" lines), letter -> text."""
    return {letter: text.strip() for letter, text in _OPTION_LINE.findall(prompt)}
