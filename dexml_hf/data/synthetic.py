"""A generated, XMC-shaped default dataset, so the quickstart runs offline with no download.

The data is *synthetic*: labels are short topic phrases ("garden soil tomato"), queries are bags of
words drawn from the topics of their labels plus noise. It has the shape that makes XMC hard and
DEXML's losses matter: power-law label frequencies (a long tail of rare labels), several positive
labels per query (mostly from one topic, sometimes from another), and label texts that share only
part of their words with the queries — so an untrained encoder gets some lexical signal and a
trained one learns the topic associations the words alone do not reveal.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from dexml_hf.data.registry import register_format

__all__ = ["SYNTHETIC_NOTICE", "generate_synthetic_tables", "generate_synthetic_xmc", "read_synthetic"]

SYNTHETIC_NOTICE = (
    "NOTE: the 'synthetic' dataset is GENERATED (dexml_hf/data/synthetic.py), not real data: topic-phrase labels "
    "with power-law frequencies, several labels per query. Its scores only show that training works."
)

# 40 topics x 12 words. Labels are phrases of words from one topic; queries mix topic words and noise.
_TOPICS = {
    "garden": "soil tomato seed compost weed hose shovel pruning mulch orchard bloom greenhouse",
    "kitchen": "oven skillet recipe flour butter knife simmer garlic dough pantry whisk roast",
    "ocean": "wave coral tide reef whale harbor sail anchor shell current diver salt",
    "space": "orbit rocket planet comet galaxy telescope lunar asteroid satellite nebula launch gravity",
    "music": "guitar melody chord drum rhythm piano concert lyric tempo violin choir album",
    "finance": "loan interest stock bond budget invoice mortgage dividend audit credit pension tax",
    "medicine": "vaccine fever clinic surgeon dose symptom therapy nurse allergy insulin wound pulse",
    "computing": "compiler kernel server database thread cache bug script memory router cloud debug",
    "sports": "goal referee stadium sprint coach tennis league helmet trophy penalty marathon soccer",
    "weather": "storm rain cloud thunder forecast humidity breeze frost drought snow hail monsoon",
    "travel": "passport luggage airport hotel ticket tourist map visa cruise hostel itinerary border",
    "law": "court judge verdict contract lawsuit statute appeal witness attorney clause tribunal evidence",
    "farming": "tractor harvest cattle barn wheat irrigation pasture fertilizer plough dairy silo crop",
    "art": "canvas sculpture gallery portrait brush palette mural sketch easel exhibit pigment etching",
    "history": "empire dynasty treaty revolution castle archive monarch battle ancient relic chronicle siege",
    "chemistry": "molecule acid reaction catalyst solvent atom bond isotope polymer titration enzyme oxide",
    "automotive": "engine brake tire gearbox clutch exhaust piston sedan diesel bumper throttle chassis",
    "education": "teacher lesson exam campus tuition lecture homework syllabus diploma tutor grade semester",
    "fashion": "fabric dress silk tailor denim collar runway stitch boutique jacket velvet hem",
    "wildlife": "tiger forest eagle wolf habitat predator nest migration jungle safari burrow prey",
    "architecture": "facade beam arch column blueprint concrete dome staircase balcony vault atrium truss",
    "energy": "solar turbine battery grid voltage nuclear pipeline reactor coal hydrogen wind fuel",
    "photography": "lens shutter aperture tripod exposure flash portrait focus zoom film sensor darkroom",
    "politics": "election senate ballot campaign policy parliament vote minister coalition debate mayor reform",
    "baking": "yeast oven crust pastry cake icing sourdough muffin croissant batter knead glaze",
    "fitness": "gym workout muscle cardio yoga stretch protein squat treadmill endurance posture dumbbell",
    "geology": "rock volcano fossil mineral quake crystal erosion magma granite canyon sediment lava",
    "shipping": "cargo container freight port crane warehouse pallet courier parcel tanker customs dock",
    "literature": "novel poem author chapter fiction verse plot narrator sonnet manuscript prose epic",
    "psychology": "memory emotion anxiety therapy behavior dream motivation stress habit perception trauma mood",
    "networking": "packet protocol bandwidth latency firewall ethernet wifi subnet proxy socket modem dns",
    "film": "director actor scene studio script camera premiere sequel cinema trailer editing screenplay",
    "robotics": "servo actuator gripper arm encoder lidar motor controller odometry drone sensor torque",
    "religion": "temple prayer monk scripture ritual pilgrim shrine faith hymn saint festival altar",
    "mathematics": "theorem proof matrix integral vector prime equation lemma algebra topology calculus graph",
    "pets": "puppy kitten leash collar vet aquarium hamster parrot litter grooming kennel bowl",
    "wine": "vineyard grape barrel cellar vintage cork tannin sommelier merlot ferment decanter harvest",
    "security": "password encryption malware breach firewall phishing token audit vault alarm lock badge",
    "climate": "carbon emission warming glacier ocean sealevel methane ozone drought renewable forest ice",
    "retail": "store cashier discount checkout shelf inventory receipt coupon aisle brand shopper mall",
}


def generate_synthetic_tables(
    num_labels: int = 400,
    num_train: int = 2000,
    num_test: int = 500,
    num_validation: int = 0,
    zipf_exponent: float = 1.1,
    mean_labels_per_query: float = 3.0,
    seed: int = 0,
) -> dict:
    """Plain Python/scipy pieces of the synthetic dataset (no ``XMCDataset`` needed).

    Returns ``{"label_titles": list[str], "label_topics": ndarray, "splits": {split: (texts, csr)},
    "label_probabilities": ndarray}``; the label matrices are queries x labels with 1.0 relevance.
    """
    if num_labels < 2 or num_train < 1 or num_test < 1 or num_validation < 0:
        raise ValueError(
            f"synthetic data: need num_labels >= 2, num_train >= 1, num_test >= 1 and num_validation >= 0, got "
            f"{num_labels=}, {num_train=}, {num_test=}, {num_validation=}"
        )
    rng = np.random.default_rng(seed)
    topic_names = list(_TOPICS)
    topic_words = [_TOPICS[t].split() for t in topic_names]
    all_words = sorted({w for words in topic_words for w in words})

    # Labels: unique 2-3 word phrases from one topic each.
    titles: list[str] = []
    label_topics: list[int] = []
    label_words: list[list[str]] = []
    seen: set[str] = set()
    attempts = 0
    while len(titles) < num_labels:
        attempts += 1
        if attempts > 200 * num_labels:
            raise ValueError(f"synthetic data: cannot make {num_labels} distinct label phrases; ask for fewer labels")
        topic = int(rng.integers(len(topic_names)))
        n_words = 2 if rng.random() < 0.6 else 3
        words = list(rng.choice(topic_words[topic], size=n_words, replace=False))
        title = " ".join(words)
        if title in seen:
            continue
        seen.add(title)
        titles.append(title)
        label_topics.append(topic)
        label_words.append(words)
    label_topics_arr = np.asarray(label_topics)

    # Power-law popularity over a random order of the labels (so frequency is not tied to topic).
    ranks = rng.permutation(num_labels) + 1
    popularity = ranks.astype(np.float64) ** -zipf_exponent
    popularity /= popularity.sum()
    by_topic = [np.flatnonzero(label_topics_arr == t) for t in range(len(topic_names))]

    def make_split(n: int) -> tuple[list[str], sp.csr_matrix]:
        texts: list[str] = []
        indptr = [0]
        indices: list[int] = []
        for _ in range(n):
            k = min(1 + int(rng.poisson(mean_labels_per_query - 1.0)), 8)
            first = int(rng.choice(num_labels, p=popularity))
            chosen = [first]
            topic = label_topics[first]
            for _ in range(k - 1):
                pool = by_topic[topic] if rng.random() < 0.75 else np.arange(num_labels)
                p = popularity[pool] / popularity[pool].sum()
                candidate = int(rng.choice(pool, p=p))
                if candidate not in chosen:
                    chosen.append(candidate)
            words: list[str] = []
            for label in chosen:
                # One word of the label's own phrase (sometimes none), plus context words from its topic.
                if rng.random() < 0.7:
                    words.append(str(rng.choice(label_words[label])))
                words.extend(rng.choice(topic_words[label_topics[label]], size=2, replace=True).tolist())
            words.extend(rng.choice(all_words, size=int(rng.integers(1, 4)), replace=True).tolist())
            rng.shuffle(words)
            texts.append(" ".join(words))
            indices.extend(sorted(chosen))
            indptr.append(len(indices))
        data = np.ones(len(indices), dtype=np.float32)
        matrix = sp.csr_matrix((data, np.asarray(indices, dtype=np.int64), np.asarray(indptr)), shape=(n, num_labels))
        return texts, matrix

    splits = {"train": make_split(num_train), "test": make_split(num_test)}
    if num_validation:
        splits["validation"] = make_split(num_validation)
    return {
        "label_titles": titles,
        "label_topics": label_topics_arr,
        "label_probabilities": popularity,
        "splits": splits,
    }


def generate_synthetic_xmc(
    num_labels: int = 400,
    num_train: int = 2000,
    num_test: int = 500,
    num_validation: int = 0,
    zipf_exponent: float = 1.1,
    mean_labels_per_query: float = 3.0,
    seed: int = 0,
):
    """The synthetic dataset as an ``XMCDataset`` (family ``generic``, name ``synthetic``)."""
    from datasets import Dataset

    from dexml_hf.data.dataset import XMCDataset

    tables = generate_synthetic_tables(
        num_labels=num_labels,
        num_train=num_train,
        num_test=num_test,
        num_validation=num_validation,
        zipf_exponent=zipf_exponent,
        mean_labels_per_query=mean_labels_per_query,
        seed=seed,
    )
    topic_names = list(_TOPICS)
    titles = tables["label_titles"]
    labels = Dataset.from_dict(
        {
            "uid": [f"L{i}" for i in range(len(titles))],
            "title": titles,
            "content": [topic_names[t] for t in tables["label_topics"]],
        }
    )
    queries = {}
    matrices = {}
    for split, (texts, matrix) in tables["splits"].items():
        queries[split] = Dataset.from_dict(
            {"uid": [f"{split}-{i}" for i in range(len(texts))], "title": texts, "content": [""] * len(texts)}
        )
        matrices[split] = matrix
    return XMCDataset(queries=queries, labels=labels, label_matrices=matrices, family="generic", name="synthetic")


def read_synthetic(
    source: str = "synthetic",
    num_labels: int = 400,
    num_train: int = 2000,
    num_test: int = 500,
    num_validation: int = 0,
    zipf_exponent: float = 1.1,
    mean_labels_per_query: float = 3.0,
    seed: int = 0,
):
    """The registry's reader for ``load_xmc_dataset("synthetic", ...)`` (``source`` is only the name)."""
    return generate_synthetic_xmc(
        num_labels=num_labels,
        num_train=num_train,
        num_test=num_test,
        num_validation=num_validation,
        zipf_exponent=zipf_exponent,
        mean_labels_per_query=mean_labels_per_query,
        seed=seed,
    )


register_format("synthetic", read_synthetic, None, None, "the generated offline dataset (no files)")
